"""tabula schema (not built yet)."""

HELP = "schema (not built yet)"


def add_arguments(parser):
    pass


def run(args) -> int:
    print("tabula schema: not built yet")
    return 2
