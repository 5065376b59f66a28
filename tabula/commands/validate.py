"""tabula validate (not built yet)."""

HELP = "validate (not built yet)"


def add_arguments(parser):
    pass


def run(args) -> int:
    print("tabula validate: not built yet")
    return 2
