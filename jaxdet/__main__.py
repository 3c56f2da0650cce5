"""The `jaxdet` command and `python -m jaxdet`: glibc's malloc set to keep freed memory when asked
(`--tune-malloc` or JAXDET_TUNE_MALLOC=1: `jaxdet.host_memory`), before any module that starts
threads is imported; then the command line itself (`jaxdet.cli`).
"""

import sys

from jaxdet import host_memory


def main(argv=None) -> int:
    """The `jaxdet` command; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    host_memory.tune_for_command(argv)
    from jaxdet import cli  # after the allocator's settings: it imports numpy and jax, which start threads

    return cli.main(argv)


if __name__ == "__main__":
    sys.exit(main())
