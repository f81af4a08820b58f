// composecheck loads a compose file with compose-go, the loader `docker compose` itself uses
// (schema validation, interpolation, merge keys, dependencies): the closest thing to
// `docker compose config` without Docker. scripts/check-deploy builds and runs it:
//
//	composecheck COMPOSE_FILE WORKING_DIR
//
// Prints the project's services and volumes; on an error prints it and exits 1.
package main

import (
	"context"
	"fmt"
	"os"
	"sort"

	"github.com/compose-spec/compose-go/v2/cli"
)

func main() {
	opts, err := cli.NewProjectOptions([]string{os.Args[1]}, cli.WithWorkingDirectory(os.Args[2]))
	if err != nil {
		fmt.Println(err)
		os.Exit(1)
	}
	p, err := opts.LoadProject(context.Background())
	if err != nil {
		fmt.Println(err)
		os.Exit(1)
	}
	names := p.ServiceNames()
	sort.Strings(names)
	fmt.Printf("project %s: %d services %v, %d volumes\n", p.Name, len(names), names, len(p.Volumes))
}
