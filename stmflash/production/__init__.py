"""Production line support for ``stmflash batch``: serial-number ledger, job files,
reports, the live view and the parallel runner. Import the submodules directly."""
