"""Teams and their API keys: who is calling, and which team's data they may see."""
