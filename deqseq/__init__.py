"""deqseq: deep equilibrium sequence models."""
