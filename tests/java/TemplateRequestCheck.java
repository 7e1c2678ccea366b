package com.amazonaws.ml.mms.wlm;

import java.io.File;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;

/** Prints the request TemplateProcess sends the template for a command line, environment and folder full of odd characters. */
public final class TemplateRequestCheck {
    public static void main(String[] unused) throws Exception {
        String odd = "quote \" backslash \\ tab \t newline \n bell \u0007 del \u007f é 中 \ud83d\ude00 = end";
        String[] args = {"/the/python", "/mms/model_service_worker.py", "--model-name", odd, ""};
        String[] envp = {"PLAIN=value", "ODD=" + odd, "EQUALS=a=b=c", "EMPTY=", "=no-name", "NOEQUALS"};
        PrintStream out = new PrintStream(System.out, true, StandardCharsets.UTF_8);
        out.println(TemplateProcess.request(args, envp, new File("/models/" + odd)));
    }
}
