"""Analysis: Bradley-Terry scores and tests, agreement, study reports and dataset exports. Nothing here imports
torch."""
