"""tabula plan (not built yet)."""

HELP = "plan (not built yet)"


def add_arguments(parser):
    pass


def run(args) -> int:
    print("tabula plan: not built yet")
    return 2
