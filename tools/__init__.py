"""Stand-ins for hardware that gpumon's tests and benchmarks run on: the fake libnvidia-ml.so.1
(`tools.fakenvml`) and fake InfiniBand sysfs trees (`tools.ibsysfs`). Not part of the installed
package; `make test` and `make bench` use them from the source tree."""
