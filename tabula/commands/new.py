"""tabula new (not built yet)."""

HELP = "new (not built yet)"


def add_arguments(parser):
    pass


def run(args) -> int:
    print("tabula new: not built yet")
    return 2
