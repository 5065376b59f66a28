"""tabula run (not built yet)."""

HELP = "run (not built yet)"


def add_arguments(parser):
    pass


def run(args) -> int:
    print("tabula run: not built yet")
    return 2
