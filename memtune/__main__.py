from memtune.children import finish
from memtune.cli import main

finish(main())
