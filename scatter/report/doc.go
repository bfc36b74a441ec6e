// Package report is the JSON report of a `vmscatter send` run (docs/report.md documents every field) and the
// lower bound it is measured against, taken over what the destinations finally loaded.
package report
