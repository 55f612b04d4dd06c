"""`nodefence-hwsim scenario`: scripted failures with a timeline and a verdict."""
