// Package host reads and sets what the local host offers: interface counters and rates (/sys), memory (/proc),
// processes, socket queues, vCPU thread affinity, and a guest's serial console log. Both the sender and the receiver
// use it; it knows nothing of the protocol.
package host
