package events_test

import (
	"flag"
	"os"
	"strconv"
	"testing"
)

// waitingTestsAtOnce is how many of the package's parallel tests run at
// once when no -parallel is given. They are the ones that mostly wait (on
// their server's answers, an election, a lost answer's retry), not on the
// CPU; go test's default, GOMAXPROCS at a time, ran them two by two on CI's
// 2 cores. A test stays serial when it counts the process's goroutines,
// starts thousands of its own, or gives its calls a deadline the load can
// break.
const waitingTestsAtOnce = 8

func TestMain(m *testing.M) {
	flag.Parse()
	parallelGiven := false
	flag.Visit(func(f *flag.Flag) { parallelGiven = parallelGiven || f.Name == "test.parallel" })
	if !parallelGiven {
		if err := flag.Set("test.parallel", strconv.Itoa(waitingTestsAtOnce)); err != nil {
			panic(err)
		}
	}
	os.Exit(m.Run())
}
