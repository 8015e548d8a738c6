"""The experiment runner: configs in, workdirs out (see DESIGN.md for the workdir contract)."""
