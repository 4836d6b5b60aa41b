"""The scene-context pass: a coarse run's low frequencies where the network saw haze (never a default)."""
