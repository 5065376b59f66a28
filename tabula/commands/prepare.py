"""tabula prepare (not built yet)."""

HELP = "prepare (not built yet)"


def add_arguments(parser):
    pass


def run(args) -> int:
    print("tabula prepare: not built yet")
    return 2
