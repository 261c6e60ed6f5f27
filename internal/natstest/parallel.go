package natstest

import (
	"flag"
	"strconv"
)

// ParallelUnlessGiven sets -test.parallel to n when the command line gave
// none; a TestMain calls it after flag.Parse. It is for packages whose
// parallel tests mostly wait (on their server's answers, a lease, a timer,
// an outage), not on the CPU: go test's default, GOMAXPROCS at a time, runs
// them two by two on CI's 2 cores.
func ParallelUnlessGiven(n int) {
	given := false
	flag.Visit(func(f *flag.Flag) { given = given || f.Name == "test.parallel" })
	if given {
		return
	}
	if err := flag.Set("test.parallel", strconv.Itoa(n)); err != nil {
		panic(err) // only without the testing flags: a programmer's error
	}
}
