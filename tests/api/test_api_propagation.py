"""Placeholder: this suite is being written (reports a skip, never a pass)."""
print("1..0 # SKIP not written yet")
