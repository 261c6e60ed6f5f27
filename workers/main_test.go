package workers

import (
	"flag"
	"os"
	"testing"

	"github.com/jetjob/jetjob/internal/natstest"
)

// waitingTestsAtOnce is how many of the package's parallel tests run at
// once when no -parallel is given. They are the ones that mostly wait: on
// their server's answers, on a lease, grace or hang-after timer, on a proxy's
// outage, not on the CPU; go test's default, GOMAXPROCS at a time, ran them
// two by two on CI's 2 cores. Run alone, each is on the CPU for a fifth to
// a quarter of its time: 8 at once about fill 2 cores. A test stays serial
// when it asserts an upper bound on a time or a count the load can break,
// or touches process-wide state (a subreaper, an executable it writes and
// runs).
const waitingTestsAtOnce = 8

func TestMain(m *testing.M) {
	flag.Parse()
	natstest.ParallelUnlessGiven(waitingTestsAtOnce)
	os.Exit(m.Run())
}
