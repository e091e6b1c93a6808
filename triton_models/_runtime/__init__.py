"""Model-side code of the Triton repository: NumPy/CuPy forward passes and Python-backend glue."""
