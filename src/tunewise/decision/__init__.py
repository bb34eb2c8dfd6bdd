"""The verdict, its cost and payback, and the learning curve."""
