package statemachine

import (
	"context"
	"fmt"
	"sort"
	"strings"

	"github.com/looplab/fsm"
)

// State is a job's state.
type State string

// Job states.
const (
	// StateNew is the state before the first event; no job is ever in it.
	StateNew       State = "new"
	StatePending   State = "pending"
	StateScheduled State = "scheduled"
	StateRunning   State = "running"
	StateCanceling State = "canceling"
	StateCanceled  State = "canceled"
	StateSucceeded State = "succeeded"
	StateFailed    State = "failed"
)

// States lists every state a job can be in.
var States = []State{StatePending, StateScheduled, StateRunning, StateCanceling, StateCanceled, StateSucceeded, StateFailed}

// ParseState parses a state name.
func ParseState(s string) (State, error) {
	for _, st := range States {
		if string(st) == s {
			return st, nil
		}
	}
	names := make([]string, len(States))
	for i, st := range States {
		names[i] = string(st)
	}
	return "", fmt.Errorf("%w: unknown state %s, expected one of %s", ErrInvalid, QuoteShort(s), strings.Join(names, ", "))
}

// Finished reports whether no transition leaves the state.
func (s State) Finished() bool {
	return s == StateCanceled || s == StateSucceeded || s == StateFailed
}

// Transition names a move in the table.
type Transition string

// Transitions.
const (
	TransitionSubmit            Transition = "submit"
	TransitionSchedule          Transition = "schedule"
	TransitionPromote           Transition = "promote"
	TransitionAcquire           Transition = "acquire"
	TransitionRequestCancel     Transition = "request_cancel"
	TransitionCancel            Transition = "cancel"
	TransitionAcknowledgeCancel Transition = "acknowledge_cancel"
	TransitionSucceed           Transition = "succeed"
	TransitionRetry             Transition = "retry"
	TransitionFail              Transition = "fail"
	TransitionRelease           Transition = "release"
)

// table is the one declaration of which transition leads from which states
// to which state.
var table = fsm.Events{
	{Name: string(TransitionSubmit), Src: []string{string(StateNew)}, Dst: string(StatePending)},
	{Name: string(TransitionSchedule), Src: []string{string(StateNew)}, Dst: string(StateScheduled)},
	{Name: string(TransitionPromote), Src: []string{string(StateScheduled)}, Dst: string(StatePending)},
	{Name: string(TransitionAcquire), Src: []string{string(StatePending)}, Dst: string(StateRunning)},
	{Name: string(TransitionRequestCancel), Src: []string{string(StateRunning)}, Dst: string(StateCanceling)},
	{Name: string(TransitionCancel), Src: []string{string(StatePending), string(StateScheduled)}, Dst: string(StateCanceled)},
	{Name: string(TransitionAcknowledgeCancel), Src: []string{string(StateCanceling)}, Dst: string(StateCanceled)},
	{Name: string(TransitionSucceed), Src: []string{string(StateRunning)}, Dst: string(StateSucceeded)},
	{Name: string(TransitionRetry), Src: []string{string(StateRunning)}, Dst: string(StateScheduled)},
	{Name: string(TransitionFail), Src: []string{string(StateRunning)}, Dst: string(StateFailed)},
	{Name: string(TransitionRelease), Src: []string{string(StateRunning)}, Dst: string(StatePending)},
}

type edge struct {
	from State
	tr   Transition
}

// edges is the table read off the fsm once, so that deciding and folding
// share one machine-free lookup and never mutate a shared fsm.
var edges = func() map[edge]State {
	out := map[edge]State{}
	for _, ev := range table {
		for _, src := range ev.Src {
			f := fsm.NewFSM(src, table, nil)
			if err := f.Event(context.Background(), ev.Name); err != nil {
				panic(fmt.Sprintf("transition table: %s from %s: %v", ev.Name, src, err))
			}
			out[edge{State(src), Transition(ev.Name)}] = State(f.Current())
		}
	}
	return out
}()

// Next returns the state that tr leads to from s, or an error naming both.
func Next(jobID string, s State, tr Transition) (State, error) {
	dst, ok := edges[edge{s, tr}]
	if !ok {
		return "", &IllegalTransitionError{JobID: jobID, State: s, Transition: tr}
	}
	return dst, nil
}

// Mermaid renders the transition table as a Mermaid state diagram.
func Mermaid() string {
	f := fsm.NewFSM(string(StateNew), table, nil)
	out, err := fsm.VisualizeWithType(f, fsm.MERMAID)
	if err != nil {
		panic(fmt.Sprintf("render transition table: %v", err))
	}
	return out
}

// TransitionsFrom lists the transitions the table allows from a state, sorted.
func TransitionsFrom(s State) []Transition {
	var out []Transition
	for e := range edges {
		if e.from == s {
			out = append(out, e.tr)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}
