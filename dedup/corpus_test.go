package dedup

import (
	"fmt"
	"strings"
)

// textPage returns a page of program-like text, different for each n: the kind of page
// that guest kernels and user space hold (source, logs, configuration, symbol tables).
func textPage(n int) []byte {
	var b strings.Builder
	for i := 0; b.Len() < PageSize; i++ {
		fmt.Fprintf(&b, "func handler%d_%d(w http.ResponseWriter, r *http.Request) error {\n"+
			"\tif err := r.ParseForm(); err != nil { return fmt.Errorf(\"parse %%d: %%w\", %d, err) }\n"+
			"\tlog.Printf(\"request %%s from %%s\", r.URL.Path, r.RemoteAddr) // 0x%08x\n}\n",
			n, i, i*n+7, uint32(n*2654435761+i))
	}
	return []byte(b.String()[:PageSize])
}
