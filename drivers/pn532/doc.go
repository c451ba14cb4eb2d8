// Package pn532 drives the NXP PN532 NFC reader chip over I²C, SPI or UART
// (HSU), in the style of periph.io/x/devices: the bus is injected, never
// closed, and the constructor talks to the chip at once so that a missing
// reader fails with a clear error.
//
// The driver covers what a contactless card station needs: detecting one
// ISO 14443 type A card at 106 kbps (InListPassiveTarget), exchanging APDUs
// with it (InDataExchange, with chaining both ways and extended frames),
// releasing it, powering the chip down, and keeping the chip working
// unattended (Recover, Health).
//
// # Host link
//
// Frames follow the PN532 user manual (UM0701-02 §6.2); the codec in frame.go
// handles normal and extended information frames, ACK, NACK and the error
// frame, and checks both checksums. Each command is acknowledged by the chip
// and answered later. The driver waits for each frame either on the IRQ line
// (falling edge; preferred) or by polling the status every PollInterval.
//
//   - I²C (address 0x24): every read starts with a status byte (bit 0:
//     ready). The driver polls with one-byte reads, then reads the frame
//     with its status byte in one transaction. A frame longer than expected
//     is asked for again with a NACK and read whole, so transactions stay
//     short. Run the bus at 100 kHz or less.
//   - SPI: mode 0 at 1 MHz; the first byte of each transaction is 0x01
//     (write), 0x02 (status read) or 0x03 (data read). The chip sends the
//     least significant bit first, which the Raspberry Pi's SPI driver
//     refuses to do, so the driver reverses the bits of every byte itself.
//   - UART (HSU, 115200 8N1): a byte stream; the chip is woken with 0x55
//     0x55 and zeros. See "Opening a serial port" below.
//
// # Recovery
//
// Frames that arrive garbled are asked for again with a NACK; a command the
// chip refuses with a NACK is sent again. When a command fails anyway
// (timeout, repeated bad frames, bus error) the driver resynchronises: an ACK
// frame aborts whatever the chip is doing and pending frames are discarded.
// After three consecutive failures it runs Recover: reset pulse on RSTPDN when
// Opts.Reset is wired, then re-initialisation (SAMConfiguration, firmware
// check, RFConfiguration). Health reports "ok", "degraded" (errors in the last
// minute) or "down" (re-initialisation failing: later commands try again at
// most once a second and fail with ErrDown in between), with counters. Card-side failures (a card pulled away mid-exchange)
// are *StatusError values, not chip failures.
//
// Errors never contain card data or UIDs, and the driver logs none.
//
// # Opening a serial port
//
// The caller opens and configures the port; without cgo, golang.org/x/sys/unix
// does it (the station's hardware assembly, station.dev/agent/drivers/hw,
// shows the whole of it): open the device with
// O_RDWR|O_NOCTTY|O_NONBLOCK, set raw mode, 8N1, no flow control and 115200
// baud with IoctlSetTermios (VMIN 0, VTIME 1), then wrap the descriptor with
// os.NewFile. A non-blocking descriptor makes the *os.File pollable, so its
// SetReadDeadline works and the driver bounds each read; with a port that
// cannot, VTIME bounds them. On a Raspberry Pi free the UART from the login
// console first (raspi-config, or remove console=serial0 from cmdline.txt).
package pn532
