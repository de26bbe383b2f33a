"""Training: what a run loads (inputs), the Trainer loop and run folder (loop), its measurements."""
