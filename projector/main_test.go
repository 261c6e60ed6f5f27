package projector

import (
	"flag"
	"os"
	"testing"

	"github.com/jetjob/jetjob/internal/natstest"
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
	natstest.ParallelUnlessGiven(waitingTestsAtOnce)
	os.Exit(m.Run())
}
