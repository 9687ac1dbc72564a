"""The plan catalog: plans, prices and their exact money math."""
