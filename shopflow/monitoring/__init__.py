"""Has the shop changed? Behaviour features and the drift check against the champion's
training window."""
