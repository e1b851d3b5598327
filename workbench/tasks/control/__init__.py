"""Control tasks for the offline / hybrid RL family: gymnasium environments and D4RL-style datasets."""
