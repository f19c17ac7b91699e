"""The move workflow: its steps as data, its state in the control database, and the runner."""
