"""`python -m karma.cli ...`, as tools/processes.py starts worker processes."""

from karma.cli import main

if __name__ == "__main__":
    main()
