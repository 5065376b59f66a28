"""tabula diff (not built yet)."""

HELP = "diff (not built yet)"


def add_arguments(parser):
    pass


def run(args) -> int:
    print("tabula diff: not built yet")
    return 2
