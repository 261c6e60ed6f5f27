package natsserver

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Where nats-server stages a replica-1 stream's atomic batches before it
// commits them (Config.BatchStaging).
const (
	// BatchStagingMemory stages them on a memory file system (Linux's
	// /dev/shm), where the machine offers one with room.
	BatchStagingMemory = "memory"
	// BatchStagingDisk leaves them where nats-server puts them: files in
	// the stream's directory, fsync'd three times per batch.
	BatchStagingDisk = "disk"
)

// BatchStagingDefault is Config.BatchStaging's default.
const BatchStagingDefault = BatchStagingMemory

// stagingPrefix names the directories made on the memory file system, so
// that a server finds the ones a dead server left.
const stagingPrefix = "jetjob-batches-"

// stagingRoomMin is the free space a memory file system must have to stage
// batches. The log's batches of small events take a few MiB at most (up to
// 1,000 events); one that does not fit is refused, and the log appends its
// events one by one. A container's /dev/shm is 64 MiB by default.
const stagingRoomMin = 32 << 20

// batchesDir is where nats-server 2.15 stages a stream's batches, in
// DataDir: jetstream/<account>/streams/<stream>/batches (its getBatchStoreDir,
// under the global account of a server without accounts). The test of
// StageBatchesInMemory checks that a staged batch lands where this says.
func (s *Server) batchesDir(stream string) string {
	return filepath.Join(s.dataDir, "jetstream", "$G", "streams", stream, "batches")
}

// StageBatchesInMemory has nats-server stage the stream's atomic batches on
// a memory file system instead of in files fsync'd three times per batch:
// on a disk like a cloud VM's, that staging is most of a small batch's
// cost. The batch is still fsync'd to the stream before its ack, so nothing
// acknowledged depends on it. What the staging adds, on disk, is that a
// batch cut short in the middle of its commit (by a crash of the machine,
// say) is completed at the next start; in memory, once the memory file
// system is gone, the part written before stays, unacknowledged, as
// pipelined appends would. Call it once the stream exists.
//
// ErrStagedOnDisk says why the batches stay on disk: where a batch is
// being staged on disk (a client that appended first), the server moves
// the staging to memory once it is done, within restageEvery.
func (s *Server) StageBatchesInMemory(stream string) error {
	if s.batchStaging != BatchStagingMemory {
		return fmt.Errorf("%w: batch staging is %q", ErrStagedOnDisk, s.batchStaging)
	}
	root, err := memoryFS()
	if err != nil {
		return fmt.Errorf("%w: %v", ErrStagedOnDisk, err)
	}
	sweepAbandoned(root)
	d, err := linkStaging(root, s.batchesDir(stream))
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.restaging == nil {
		s.restaging = make(chan struct{})
		go s.keepStaging(s.restaging)
	}
	if err != nil {
		if errors.Is(err, ErrStagedInMemoryLater) {
			s.onDisk = append(s.onDisk, stream)
		}
		return fmt.Errorf("%w: %w", ErrStagedOnDisk, err)
	}
	s.staging = append(s.staging, d)
	return nil
}

// linkStaging links the batches directory link to a new staging directory
// in root. A batches directory nats-server made on disk, for batches staged
// before, is replaced once no batch is staged in it.
func linkStaging(root, link string) (staged, error) {
	d, err := newStaging(root, link)
	if err != nil {
		return staged{}, err
	}
	err = os.Symlink(d.dir, link)
	if errors.Is(err, os.ErrExist) {
		if os.Remove(link) != nil { // only if empty
			d.drop()
			return staged{}, ErrStagedInMemoryLater
		}
		// A batch that creates the directory again now stays on disk:
		// its files are in use.
		if err = os.Symlink(d.dir, link); errors.Is(err, os.ErrExist) {
			err = ErrStagedInMemoryLater
		}
	}
	if err != nil {
		d.drop()
		return staged{}, err
	}
	return d, nil
}

// restageEvery is how often a server checks that its staging directories
// are still there, and tries again to stage in memory the batches of a
// stream it could not.
const restageEvery = 5 * time.Second

// keepStaging restages until done closes.
func (s *Server) keepStaging(done <-chan struct{}) {
	tick := time.NewTicker(restageEvery)
	defer tick.Stop()
	for {
		select {
		case <-done:
			return
		case <-tick.C:
			s.restage()
		}
	}
}

// restage links a stream whose staging directory was removed behind the
// server's back (systemd removes a user's files in /dev/shm when the user
// logs out, with RemoveIPC) to a new one: until then, every batch of the
// stream is refused, and the log appends its events one by one. It also
// stages in memory the batches of streams that were staging one on disk.
func (s *Server) restage() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, d := range s.staging {
		if d.lock == nil {
			continue // a dead server's, for nats-server to complete
		}
		if _, err := os.Lstat(d.dir); err == nil {
			continue
		}
		fresh, err := newStaging(filepath.Dir(d.dir), d.link)
		if err != nil {
			continue
		}
		// Replaced in one step, so that a batch never finds no directory.
		next := d.link + ".next"
		_ = os.Remove(next)
		if os.Symlink(fresh.dir, next) != nil || os.Rename(next, d.link) != nil {
			_ = os.Remove(next)
			fresh.drop()
			continue
		}
		_ = d.lock.Close()
		s.staging[i] = fresh
	}
	if root, err := memoryFS(); err == nil {
		var still []string
		for _, stream := range s.onDisk {
			d, err := linkStaging(root, s.batchesDir(stream))
			if errors.Is(err, ErrStagedInMemoryLater) {
				still = append(still, stream)
			} else if err == nil {
				s.staging = append(s.staging, d)
			}
		}
		s.onDisk = still
	}
}

// CanStageInMemory says why StageBatchesInMemory would find no memory file
// system to stage batches on here, or nil when it would.
func CanStageInMemory() error {
	_, err := memoryFS()
	return err
}

// staged is a stream's batches directory linked to one on a memory file
// system; lock, when this server made it, holds it in use.
type staged struct {
	link, dir string
	lock      *os.File
}

// stagingLinkFile, in a staging directory, holds the path of the link to
// it in its server's data directory.
const stagingLinkFile = ".link"

// newStaging makes a staging directory in root for link, held by this
// server (the lock tells servers sweeping abandoned directories, in this
// PID namespace or another sharing /dev/shm, that it is in use).
func newStaging(root, link string) (staged, error) {
	dir, err := os.MkdirTemp(root, stagingPrefix)
	if err != nil {
		return staged{}, err
	}
	d := staged{link: link, dir: dir}
	if d.lock, err = holdShared(dir); err == nil {
		err = os.WriteFile(filepath.Join(dir, stagingLinkFile), []byte(link), 0o600)
	}
	if err != nil {
		d.drop()
		return staged{}, err
	}
	return d, nil
}

// drop lets go of a staging directory that holds no batch, and removes it.
func (d staged) drop() {
	if d.lock != nil {
		_ = d.lock.Close()
	}
	_ = os.RemoveAll(d.dir)
}

// holdsBatch says whether a staging directory holds anything but its link
// file: a batch nats-server staged and has not committed.
func holdsBatch(dir string) bool {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return false
	}
	for _, e := range entries {
		if e.Name() != stagingLinkFile {
			return true
		}
	}
	return false
}

// sweepAbandoned removes the staging directories that no running server
// holds, unless one holds a batch and its data directory still links to it
// (the next server there completes the batch from it): a server killed
// whose data directory is never used again leaves one behind.
func sweepAbandoned(root string) {
	entries, _ := os.ReadDir(root)
	for _, e := range entries {
		dir := filepath.Join(root, e.Name())
		if !strings.HasPrefix(e.Name(), stagingPrefix) || !ownUnheld(dir) {
			continue
		}
		link, _ := os.ReadFile(filepath.Join(dir, stagingLinkFile))
		if target, err := os.Readlink(string(link)); err == nil && target == dir && holdsBatch(dir) {
			continue
		}
		_ = os.RemoveAll(dir)
	}
}

// stagedBefore finds the staging directories that servers before this one
// linked from the data directory: one that died left batches there for
// nats-server to complete as it starts (it then unlinks them). A link to
// anything else (gone with a reboot, another user's, or held by a running
// server whose data directory was copied here) is removed first, so that
// nats-server never reads it; a batch staged there stays cut short, as
// after a crash of the machine.
func stagedBefore(dataDir string) []staged {
	var out []staged
	accounts, _ := os.ReadDir(filepath.Join(dataDir, "jetstream"))
	for _, a := range accounts {
		streams, _ := os.ReadDir(filepath.Join(dataDir, "jetstream", a.Name(), "streams"))
		for _, st := range streams {
			link := filepath.Join(dataDir, "jetstream", a.Name(), "streams", st.Name(), "batches")
			dir, err := os.Readlink(link)
			if err != nil {
				continue // not a link: staged on disk
			}
			if !strings.HasPrefix(filepath.Base(dir), stagingPrefix) || !ownUnheld(dir) {
				_ = os.Remove(link)
				continue
			}
			out = append(out, staged{link: link, dir: dir})
		}
	}
	return out
}

// removeStaging, for each staging directory, lets go of it and, when
// unlink, removes its link if the directory is empty (one that still holds
// a batch, at a Shutdown in the middle of a commit, is kept for the next
// start to complete). It removes the directories whose link is gone, and
// returns the others.
func removeStaging(dirs []staged, unlink bool) (linked []staged) {
	for _, d := range dirs {
		if unlink {
			if d.lock != nil {
				_ = d.lock.Close()
			}
			if !holdsBatch(d.dir) {
				_ = os.Remove(d.link)
			}
		}
		if _, err := os.Lstat(d.link); errors.Is(err, os.ErrNotExist) {
			_ = os.RemoveAll(d.dir)
			continue
		}
		linked = append(linked, d)
	}
	return linked
}
