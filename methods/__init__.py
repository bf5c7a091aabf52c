"""clbench's built-in methods, each registered through the public plugin API."""
