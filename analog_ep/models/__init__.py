"""The seed papers' abstract EP models (no circuit): continuous Hopfield EP and the EP≡RBP check,
discrete-time EB/P models and the GDU check, and their trainer."""
