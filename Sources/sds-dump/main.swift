import Glibc
import SDSDump

// sds-dump: see what an SDS server serves, as Envoy would receive it. `DumpCommandLine` parses; `DumpClient` dumps.
exit(DumpCommandLine.main(arguments: Array(CommandLine.arguments.dropFirst())))
