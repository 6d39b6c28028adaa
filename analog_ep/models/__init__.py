"""The seed papers' abstract EP models (no circuit): discrete-time EP and the GDU check."""
