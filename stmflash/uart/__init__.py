"""Programming through the ROM USART bootloader (ST AN3155).

:mod:`stmflash.uart.protocol` is the session (sync, identify, commands),
:mod:`stmflash.uart.link` presents it to the pipeline, :mod:`stmflash.uart.entry` gets the
chip into its bootloader. Submodules are imported on use to keep the CLI fast.
"""
