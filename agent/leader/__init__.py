"""The leader side: election, what it hears, its judgement each round, its status view."""
