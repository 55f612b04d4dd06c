"""Who is dead (pure): the failure detector, its profiles and the guards on a fence decision."""
