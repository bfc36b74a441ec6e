package bench

// writePlots draws the comparison's charts next to results.json. Filled in once bench/plot lands.
func writePlots(dir string, res *CompareResult) error { return nil }

// writePolicyPlots draws the policy matrix's charts. Filled in once bench/plot lands.
func writePolicyPlots(dir string, rows []PolicyRun) error { return nil }
