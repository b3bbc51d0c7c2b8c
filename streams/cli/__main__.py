"""`python -m karma.streams.cli ...`, as streams/processes.py starts worker processes."""

from karma.streams.cli import main

if __name__ == "__main__":
    main()
