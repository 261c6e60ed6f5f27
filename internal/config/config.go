// Package config gives the counts and durations of jetjob's config structs
// their defaults: a zero takes the field's default, a negative is refused.
//
// Each package keeps its own sentinel (its ErrInvalidConfig), which the
// errors made here wrap, so that errors.Is matches them as before; what is
// shared is the rule and the wording of its refusal, which names the field,
// its value and what 0 stands for.
package config

import (
	"fmt"
	"math"
	"time"
)

// Number is a count or a duration (time.Duration is an int64).
type Number interface {
	~int | ~int64
}

// Default gives *v the default def where it is 0, and refuses a negative
// with an error wrapping invalid, "invalid: name value, expected 0 (the
// default, def) or more": a negative means nothing for such a field, and a
// caller who wrote one (-1 for "none") meant something else than the
// default it would silently get.
func Default[T Number](invalid error, name string, v *T, def T) error {
	return DefaultSaid(invalid, name, v, def, fmt.Sprint(def))
}

// DefaultSaid is Default for a default that its value alone does not say,
// one derived from other fields: said stands for it in the refusal.
func DefaultSaid[T Number](invalid error, name string, v *T, def T, said string) error {
	if *v < 0 {
		return fmt.Errorf("%w: %s %v, expected 0 (the default, %s) or more", invalid, name, *v, said)
	}
	if *v == 0 {
		*v = def
	}
	return nil
}

// SumDurations adds durations of 0 or more, capped at the longest a
// time.Duration holds: a wait made of a long one given for "never" (a
// grace of a century, a timeout of math.MaxInt64) and a margin must stay
// that long, where the plain sum wrapped to a negative and a timer made of
// it fired at once.
func SumDurations(ds ...time.Duration) time.Duration {
	var sum time.Duration
	for _, d := range ds {
		if d > math.MaxInt64-sum {
			return math.MaxInt64
		}
		sum += d
	}
	return sum
}
