from memtune.cli import main
from memtune.proc.children import finish

finish(main())
