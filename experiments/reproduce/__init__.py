"""Reproductions of published figures, one command each (see the README's Reproductions section)."""
