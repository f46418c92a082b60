EquivalenceReport = None
check_equivalence = None
