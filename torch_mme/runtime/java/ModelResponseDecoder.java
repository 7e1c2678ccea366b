package com.amazonaws.ml.mms.util.codec;

import com.amazonaws.ml.mms.util.messages.ModelWorkerResponse;
import com.amazonaws.ml.mms.util.messages.Predictions;
import io.netty.buffer.ByteBuf;
import io.netty.channel.ChannelHandlerContext;
import io.netty.handler.codec.ByteToMessageDecoder;
import io.netty.handler.codec.CorruptedFrameException;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;

/**
 * torch-mme's decoder of the responses a model worker sends to MMS (multi-model-server 1.1.11's frontend).
 *
 * <p>It has the name of MMS's own class and is found first on MMS's class path ("." comes before the
 * jar; torch-mme serve starts Java in a folder holding this class), so it replaces that class unchanged
 * elsewhere.
 *
 * <p>Why: netty hands the decoder whatever one read returned, and the read size adapts to the recent
 * messages, so a response can arrive cut at any byte. MMS's decoder waits for more bytes at most cuts
 * but throws when a response is cut inside a prediction's status code or its header map (which always
 * holds the content type). MMS then closes the connection and restarts the worker, and every request
 * on it fails with "Worker died.": about one request in 10,000 when small and long responses mix. Here
 * every field waits for its bytes; the wire format is unchanged.
 *
 * <p>A response: code (int), message (string), then per request: request id (string; length -1 ends the
 * list), content type (string), status (int), reason phrase (string), header count (int) and that many
 * name/value strings, body (bytes). A string or bytes is an int length and that many bytes; ints are
 * big-endian.
 *
 * <p>Also: a header that could break MMS's HTTP answer (a name that is not a token, a value with CR or LF)
 * is dropped, and the content type and reason phrase are kept on one line ({@code oneLine}).
 */
public class ModelResponseDecoder extends ByteToMessageDecoder {

    private static final int END = -1;

    private final int maxBufferSize;

    public ModelResponseDecoder(int maxBufferSize) {
        this.maxBufferSize = maxBufferSize;
    }

    @Override
    protected void decode(ChannelHandlerContext ctx, ByteBuf in, List<Object> out) {
        in.markReaderIndex();
        try {
            out.add(readResponse(in));
        } catch (Incomplete incomplete) {
            in.resetReaderIndex(); // called again when more bytes have arrived
        }
    }

    private ModelWorkerResponse readResponse(ByteBuf in) {
        ModelWorkerResponse response = new ModelWorkerResponse();
        response.setCode(readInt(in));
        response.setMessage(readString(in, readLength(in)));
        List<Predictions> predictions = new ArrayList<>();
        for (int length = readLength(in); length != END; length = readLength(in)) {
            Predictions prediction = new Predictions();
            prediction.setRequestId(readString(in, length));
            prediction.setContentType(oneLine(readString(in, readLength(in))));
            prediction.setStatusCode(readInt(in));
            prediction.setReasonPhrase(oneLine(readString(in, readLength(in))));
            prediction.setHeaders(readHeaders(in, readLength(in)));
            prediction.setResp(readBytes(in, readLength(in)));
            predictions.add(prediction);
        }
        response.setPredictions(predictions);
        return response;
    }

    private Map<String, String> readHeaders(ByteBuf in, int count) {
        if (count < 0) {
            throw new CorruptedFrameException("Invalid header count: " + count);
        }
        Map<String, String> headers = new HashMap<>();
        for (int i = 0; i < count; i++) {
            String name = readString(in, readLength(in));
            String value = readString(in, readLength(in));
            if (isToken(name) && value.equals(oneLine(value))) {
                headers.put(name, value); // anything else is dropped: see oneLine
            }
        }
        return headers;
    }

    /**
     * The text without control characters (CR, LF, NUL, ...; a tab is kept), each replaced by a space.
     *
     * <p>MMS writes a worker's content type, reason phrase and headers into its HTTP answer with Netty's
     * header validation off: a model's code that put CR LF in one could end the answer's head early and
     * make the rest of its body read as another answer on the same connection, possibly another tenant's
     * request's. A header whose name is not an HTTP token or whose value holds a control character is
     * dropped; the content type and the reason phrase keep their text on one line.
     */
    static String oneLine(String text) {
        StringBuilder out = null;
        for (int i = 0; i < text.length(); i++) {
            char c = text.charAt(i);
            if ((c < 0x20 && c != '\t') || c == 0x7f) {
                if (out == null) {
                    out = new StringBuilder(text.substring(0, i));
                }
                out.append(' ');
            } else if (out != null) {
                out.append(c);
            }
        }
        return out == null ? text : out.toString();
    }

    private static boolean isToken(String name) {
        if (name.isEmpty()) {
            return false;
        }
        for (int i = 0; i < name.length(); i++) {
            char c = name.charAt(i);
            boolean ok = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')
                    || "!#$%&'*+-.^_`|~".indexOf(c) >= 0;
            if (!ok) {
                return false;
            }
        }
        return true;
    }

    private static int readInt(ByteBuf in) {
        if (in.readableBytes() < 4) {
            throw Incomplete.INSTANCE;
        }
        return in.readInt();
    }

    private int readLength(ByteBuf in) {
        int length = readInt(in);
        if (length > maxBufferSize) {
            throw new CorruptedFrameException("Message size exceed limit: " + length);
        }
        return length;
    }

    private static String readString(ByteBuf in, int length) {
        return new String(readBytes(in, length), StandardCharsets.UTF_8);
    }

    private static byte[] readBytes(ByteBuf in, int length) {
        if (length < 0) {
            throw new CorruptedFrameException("Invalid message size: " + length);
        }
        if (in.readableBytes() < length) {
            throw Incomplete.INSTANCE;
        }
        byte[] bytes = new byte[length];
        in.readBytes(bytes);
        return bytes;
    }

    /** The response has not fully arrived: control flow, so one shared instance without a stack trace. */
    private static final class Incomplete extends RuntimeException {
        private static final long serialVersionUID = 1L;
        static final Incomplete INSTANCE = new Incomplete();

        private Incomplete() {
            super(null, null, false, false);
        }
    }
}
