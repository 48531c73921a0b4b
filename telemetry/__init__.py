"""The shared kernel every part of aifmon uses: metric schema, site inventory, configuration, exposition format, GPU
models, power figures and the user-error type. It imports no other part (tests/test_layers.py)."""
