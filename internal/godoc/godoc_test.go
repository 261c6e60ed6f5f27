package godoc

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// public are the packages a Go user imports.
var public = []string{"events", "statemachine", "projector", "workers", "maintenance"}

// pkg is one public package's source, tests left out.
type pkg struct {
	name  string
	files map[string]*ast.File // by base name
}

func load(t *testing.T) []pkg {
	t.Helper()
	var pkgs []pkg
	for _, name := range public {
		dir := filepath.Join("..", "..", name)
		entries, err := os.ReadDir(dir)
		require.NoError(t, err)
		p := pkg{name: name, files: map[string]*ast.File{}}
		for _, e := range entries {
			if !strings.HasSuffix(e.Name(), ".go") || strings.HasSuffix(e.Name(), "_test.go") {
				continue
			}
			f, err := parser.ParseFile(token.NewFileSet(), filepath.Join(dir, e.Name()), nil, parser.ParseComments)
			require.NoError(t, err)
			p.files[e.Name()] = f
		}
		pkgs = append(pkgs, p)
	}
	return pkgs
}

// consts lists the package-level constants of every public package, as
// "pkg.Name".
func consts(pkgs []pkg) map[string]bool {
	all := map[string]bool{}
	for _, p := range pkgs {
		for _, f := range p.files {
			for _, d := range f.Decls {
				if g, ok := d.(*ast.GenDecl); ok && (g.Tok == token.CONST || g.Tok == token.VAR) {
					for _, s := range g.Specs {
						for _, n := range s.(*ast.ValueSpec).Names {
							all[p.name+"."+n.Name] = true
						}
					}
				}
			}
		}
	}
	return all
}

// exportedDocs calls fn with every doc comment go doc shows (the package's
// own aside), and the parameter names of the function it documents.
func exportedDocs(p pkg, fn func(file, what string, doc *ast.CommentGroup, params []string)) {
	fields := func(file, what string, st *ast.StructType) {
		for _, fld := range st.Fields.List {
			for _, n := range fld.Names {
				if n.IsExported() {
					fn(file, what+"."+n.Name, fld.Doc, nil)
					fn(file, what+"."+n.Name, fld.Comment, nil)
				}
			}
		}
	}
	for file, f := range p.files {
		for _, d := range f.Decls {
			switch d := d.(type) {
			case *ast.FuncDecl:
				if !d.Name.IsExported() {
					continue
				}
				if d.Recv != nil {
					recv := d.Recv.List[0].Type
					if star, ok := recv.(*ast.StarExpr); ok {
						recv = star.X
					}
					if id, ok := recv.(*ast.Ident); !ok || !id.IsExported() {
						continue
					}
				}
				var params []string
				for _, fl := range d.Type.Params.List {
					for _, n := range fl.Names {
						params = append(params, n.Name)
					}
				}
				if d.Type.Results != nil {
					for _, fl := range d.Type.Results.List {
						for _, n := range fl.Names {
							params = append(params, n.Name)
						}
					}
				}
				fn(file, d.Name.Name, d.Doc, params)
			case *ast.GenDecl:
				if exportsAny(d) {
					fn(file, d.Tok.String(), d.Doc, nil)
				}
				for _, s := range d.Specs {
					switch s := s.(type) {
					case *ast.TypeSpec:
						if !s.Name.IsExported() {
							continue
						}
						fn(file, s.Name.Name, s.Doc, nil)
						if st, ok := s.Type.(*ast.StructType); ok {
							fields(file, s.Name.Name, st)
						}
					case *ast.ValueSpec:
						for _, n := range s.Names {
							if n.IsExported() {
								fn(file, n.Name, s.Doc, nil)
								fn(file, n.Name, s.Comment, nil)
							}
						}
					}
				}
			}
		}
	}
}

func exportsAny(d *ast.GenDecl) bool {
	for _, s := range d.Specs {
		switch s := s.(type) {
		case *ast.TypeSpec:
			if s.Name.IsExported() {
				return true
			}
		case *ast.ValueSpec:
			for _, n := range s.Names {
				if n.IsExported() {
					return true
				}
			}
		}
	}
	return false
}

var defaultNumber = regexp.MustCompile(`\b[Dd]efault:?\s+\d`)

var defaultName = regexp.MustCompile(`\b(?:([a-z]+)\.)?([A-Z][A-Za-z0-9]*Default)\b`)

// A config's field says its default by the constant that holds it, so
// that the two cannot drift apart, and every constant a doc names is
// there to look up.
func TestConfigFieldsSayTheirDefaults(t *testing.T) {
	pkgs := load(t)
	known := consts(pkgs)
	for _, p := range pkgs {
		for file, f := range p.files {
			ast.Inspect(f, func(n ast.Node) bool {
				ts, ok := n.(*ast.TypeSpec)
				if !ok || !ts.Name.IsExported() || !regexp.MustCompile(`(Config|Options|Params)$`).MatchString(ts.Name.Name) {
					return true
				}
				st, ok := ts.Type.(*ast.StructType)
				if !ok {
					return true
				}
				for _, fld := range st.Fields.List {
					for _, name := range fld.Names {
						if !name.IsExported() {
							continue
						}
						where := p.name + "/" + file + ": " + ts.Name.Name + "." + name.Name
						doc := fld.Doc.Text() + fld.Comment.Text()
						if strings.TrimSpace(doc) == "" {
							t.Errorf("%s has no doc: say what it is and what its zero value takes", where)
						}
						if defaultNumber.MatchString(doc) {
							t.Errorf("%s gives its default as a number: name its XxxDefault constant", where)
						}
					}
				}
				return true
			})
		}
		exportedDocs(p, func(file, what string, doc *ast.CommentGroup, _ []string) {
			for _, m := range defaultName.FindAllStringSubmatch(doc.Text(), -1) {
				owner := p.name
				if m[1] != "" {
					owner = m[1]
				}
				if !slices.Contains(public, owner) {
					continue // another package's, such as provision's
				}
				if !known[owner+"."+m[2]] {
					t.Errorf("%s/%s: the doc of %s names %s, which does not exist", p.name, file, what, m[0])
				}
			}
		})
	}
}

// go doc shows no unexported name, so an exported doc that gives a number
// or a bound by one leaves its reader with a name to look up in the source.
func TestExportedDocsNameNothingUnexported(t *testing.T) {
	camel := regexp.MustCompile(`^[a-z]+[A-Z][A-Za-z0-9]*$`)
	for _, p := range load(t) {
		hidden := map[string]bool{}
		for _, f := range p.files {
			ast.Inspect(f, func(n ast.Node) bool {
				var names []*ast.Ident
				switch n := n.(type) {
				case *ast.ValueSpec:
					names = n.Names
				case *ast.TypeSpec:
					names = []*ast.Ident{n.Name}
				case *ast.FuncDecl:
					if n.Recv == nil {
						names = []*ast.Ident{n.Name}
					}
				case *ast.Field:
					names = n.Names
				}
				for _, id := range names {
					if !id.IsExported() && camel.MatchString(id.Name) {
						hidden[id.Name] = true
					}
				}
				return true
			})
		}
		word := regexp.MustCompile(`\b[a-z]+[A-Z][A-Za-z0-9]*\b`)
		exportedDocs(p, func(file, what string, doc *ast.CommentGroup, params []string) {
			for _, w := range word.FindAllString(doc.Text(), -1) {
				if hidden[w] && !slices.Contains(params, w) {
					t.Errorf("%s/%s: the doc of %s names %s, which go doc does not show: say what it stands for", p.name, file, what, w)
				}
			}
		})
	}
}

// Each package's errors are in one place, its errors.go, where a caller
// looks for what to match with errors.Is and errors.As.
func TestExportedErrorsAreInErrorsGo(t *testing.T) {
	for _, p := range load(t) {
		for file, f := range p.files {
			for _, d := range f.Decls {
				switch d := d.(type) {
				case *ast.GenDecl:
					for _, s := range d.Specs {
						switch s := s.(type) {
						case *ast.ValueSpec:
							for _, n := range s.Names {
								if errName.MatchString(n.Name) && file != "errors.go" {
									t.Errorf("%s.%s is declared in %s", p.name, n.Name, file)
								}
							}
						case *ast.TypeSpec:
							if s.Name.IsExported() && hasErrorMethod(p, s.Name.Name) && file != "errors.go" {
								t.Errorf("%s.%s is declared in %s", p.name, s.Name.Name, file)
							}
						}
					}
				}
			}
		}
	}
}

var errName = regexp.MustCompile(`^Err[A-Z]`)

func hasErrorMethod(p pkg, typ string) bool {
	for _, f := range p.files {
		for _, d := range f.Decls {
			fd, ok := d.(*ast.FuncDecl)
			if !ok || fd.Recv == nil || fd.Name.Name != "Error" {
				continue
			}
			recv := fd.Recv.List[0].Type
			if star, ok := recv.(*ast.StarExpr); ok {
				recv = star.X
			}
			if id, ok := recv.(*ast.Ident); ok && id.Name == typ {
				return true
			}
		}
	}
	return false
}
