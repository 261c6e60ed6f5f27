// Package godoc holds the doc comments of jetjob's public packages to what
// a reader of go doc relies on; it has only tests: every field of a config
// says its default (by its XxxDefault constant), every such constant named
// exists, no exported doc names what go doc does not show, and every
// exported error is declared in its package's errors.go.
package godoc
