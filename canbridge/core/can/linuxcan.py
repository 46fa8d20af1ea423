"""Constants of the Linux CAN socket API (linux/can.h, linux/can/raw.h, asm-generic/socket.h) and the
frame flags as plain ints, shared by the SocketCAN driver and its recvmmsg receiver."""

from __future__ import annotations

import socket

from canbridge._model import FrameFlags

AF_CAN = getattr(socket, "AF_CAN", 29)
CAN_RAW = getattr(socket, "CAN_RAW", 1)
SOL_CAN_RAW = 101  # SOL_CAN_BASE + CAN_RAW
CAN_RAW_FILTER = 1
CAN_RAW_ERR_FILTER = 2
CAN_RAW_FD_FRAMES = 5
CAN_RAW_FILTER_MAX = 512  # the kernel refuses longer filter lists

SO_TIMESTAMPNS = 35
SO_RXQ_OVFL = 40
SO_RCVBUFFORCE = 33
SO_MEMINFO = 55  # u32[SK_MEMINFO_VARS]; index 8 is the socket's drop count

CAN_EFF_FLAG = 0x80000000
CAN_RTR_FLAG = 0x40000000
CAN_ERR_FLAG = 0x20000000
CAN_SFF_MASK = 0x000007FF
CAN_EFF_MASK = 0x1FFFFFFF
CAN_ERR_MASK = 0x1FFFFFFF
CANFD_BRS = 0x01
CANFD_ESI = 0x02

CAN_MTU = 16  # sizeof(struct can_frame)
CANFD_MTU = 72  # sizeof(struct canfd_frame)

# FrameFlags as plain ints: the parse loops test them once per frame
EXT = int(FrameFlags.EXTENDED)
RTR = int(FrameFlags.RTR)
FD = int(FrameFlags.FD)
BRS = int(FrameFlags.BRS)
ESI = int(FrameFlags.ESI)
ERR = int(FrameFlags.ERROR)
